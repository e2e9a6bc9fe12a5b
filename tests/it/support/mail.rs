//! Mail into a test gateway over its real SMTP listener, for tests whose subject is not SMTP.

use super::{SmtpClient, TestGateway, simple_message};

impl TestGateway {
    /// The RCPT reply code for one address, in a fresh session.
    pub async fn rcpt_code(&self, address: &str) -> u16 {
        let mut client = SmtpClient::connect(self.smtp).await;
        client.expect("EHLO client.test", 250).await;
        client.expect("MAIL FROM:<a@sender.example>", 250).await;
        client.cmd(&format!("RCPT TO:<{address}>")).await.0
    }

    /// Sends one [`simple_message`] and requires the 250 that accepts it.
    pub async fn send_simple(&self, to: &str, subject: &str, from: &str) {
        let mut client = SmtpClient::connect(self.smtp).await;
        let message = simple_message(from, to, subject, "body");
        let (code, text) = client.send_message(from, &[to], &message).await;
        assert_eq!(code, 250, "{text}");
    }
}
