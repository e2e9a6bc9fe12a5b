//! Reaching into a gateway's database from outside, on whichever backend it runs: a trigger that
//! makes inserts into `messages` fail, and the database's write lock held by the test.

use sqlx::Connection as _;
use sqlx::Executor as _;

/// What the trigger's error says; a test can find it in the gateway's log.
pub const REFUSAL: &str = "refused by the test";

/// Makes every insert into `messages` of the gateway's database fail (`refuse = true`), or
/// lifts that again.
pub async fn refuse_message_inserts(database_url: &str, refuse: bool) {
    if refuse {
        create_refusal(database_url, None).await;
    } else {
        let statements: &[&str] = if is_postgres(database_url) {
            &[
                "DROP TRIGGER refuse_messages ON messages",
                "DROP FUNCTION refuse_messages()",
            ]
        } else {
            &["DROP TRIGGER refuse_messages"]
        };
        execute(database_url, statements).await;
    }
}

/// Makes the insert of a message with this subject fail, and no other.
pub async fn refuse_messages_with_subject(database_url: &str, subject: &str) {
    assert!(
        !subject.contains('\''),
        "the subject is pasted into SQL: {subject}"
    );
    create_refusal(database_url, Some(subject)).await;
}

async fn create_refusal(database_url: &str, subject: Option<&str>) {
    if is_postgres(database_url) {
        let condition =
            subject.map_or_else(|| "true".to_owned(), |s| format!("NEW.subject = '{s}'"));
        let function = format!(
            "CREATE FUNCTION refuse_messages() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN IF {condition} THEN RAISE EXCEPTION '{REFUSAL}'; END IF; RETURN NEW; END $$"
        );
        execute(
            database_url,
            &[
                function.as_str(),
                "CREATE TRIGGER refuse_messages BEFORE INSERT ON messages \
                 FOR EACH ROW EXECUTE FUNCTION refuse_messages()",
            ],
        )
        .await;
    } else {
        let condition = subject
            .map(|s| format!("WHEN NEW.subject = '{s}' "))
            .unwrap_or_default();
        let trigger = format!(
            "CREATE TRIGGER refuse_messages BEFORE INSERT ON messages {condition}\
             BEGIN SELECT RAISE(ABORT, '{REFUSAL}'); END"
        );
        execute(database_url, &[trigger.as_str()]).await;
    }
}

fn is_postgres(database_url: &str) -> bool {
    database_url.starts_with("postgres")
}

async fn execute(database_url: &str, statements: &[&str]) {
    if is_postgres(database_url) {
        let mut conn = sqlx::PgConnection::connect(database_url)
            .await
            .expect("connect to postgres");
        for statement in statements {
            conn.execute(*statement).await.expect("trigger statement");
        }
        conn.close().await.expect("close");
    } else {
        let mut conn = sqlx::SqliteConnection::connect(database_url)
            .await
            .expect("open sqlite");
        for statement in statements {
            conn.execute(*statement).await.expect("trigger statement");
        }
        conn.close().await.expect("close");
    }
}

/// A transaction of the test's that holds what the gateway needs to insert a message: on SQLite
/// the database's write lock (`BEGIN IMMEDIATE`), on PostgreSQL an `EXCLUSIVE` lock on
/// `messages` (reads go on, inserts wait). Until [`WriteLock::release`], the gateway's committer
/// waits on the first write that inserts a message.
pub enum WriteLock {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

impl WriteLock {
    pub async fn hold(database_url: &str) -> Self {
        if is_postgres(database_url) {
            let mut conn = sqlx::PgConnection::connect(database_url)
                .await
                .expect("connect to postgres");
            conn.execute("BEGIN").await.expect("BEGIN");
            conn.execute("LOCK TABLE messages IN EXCLUSIVE MODE")
                .await
                .expect("lock messages");
            Self::Postgres(conn)
        } else {
            let mut conn = sqlx::SqliteConnection::connect(database_url)
                .await
                .expect("open sqlite");
            conn.execute("BEGIN IMMEDIATE")
                .await
                .expect("take the write lock");
            Self::Sqlite(conn)
        }
    }

    /// Waits until an insert into `messages` waits on this lock, where the backend shows it:
    /// PostgreSQL lists the waiting lock in `pg_locks`; SQLite shows nothing of a writer
    /// sleeping in its busy handler, so there this returns at once.
    pub async fn until_an_insert_waits(&mut self) {
        let Self::Postgres(conn) = self else {
            return;
        };
        let deadline = tokio::time::Instant::now() + super::SOON;
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks \
                 WHERE relation = 'messages'::regclass AND NOT granted",
            )
            .fetch_one(&mut *conn)
            .await
            .expect("read pg_locks");
            if waiting > 0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for an insert into messages to wait on the lock"
            );
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }

    /// Ends the transaction, writing nothing.
    pub async fn release(self) {
        match self {
            Self::Sqlite(mut conn) => {
                conn.execute("ROLLBACK").await.expect("ROLLBACK");
                conn.close().await.expect("close");
            }
            Self::Postgres(mut conn) => {
                conn.execute("ROLLBACK").await.expect("ROLLBACK");
                conn.close().await.expect("close");
            }
        }
    }
}
