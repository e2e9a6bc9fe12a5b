//! The payload cap (`delivery.max_payload_bytes`): past it the large fields of a mail event are
//! left out, biggest and most redundant first, and `omitted_reason` names them.
//!
//! Sizes are found without formatting the event: [`json_len_upper_bound`] walks it once
//! counting a bound (nearly every event is far below the cap and stops there), and
//! [`serialized_len`] counts the exact length without keeping the text.

use serde::Serialize;
use serde::ser::{self, Impossible};

use super::mail::{Email, MailEvent};

/// The fields of `email` the cap may leave out, in the order it does (the earlier emails are
/// also in `thread_prompt`, and the html is also in `prompt`, as markdown).
const OMITTABLE: [(&str, LeaveOut); 6] = [
    ("previous_emails", |email| {
        take_len(&mut email.previous_emails)
    }),
    ("html", |email| take_len(&mut email.html)),
    ("thread_prompt", |email| take_len(&mut email.thread_prompt)),
    ("prompt", |email| take_len(&mut email.prompt)),
    ("plain_text", |email| take_len(&mut email.plain_text)),
    ("extracted_text", |email| {
        take_len(&mut email.extracted_text)
    }),
];

/// Empties one field of `email`, returning the JSON length of what it held (`None`: it was
/// empty already).
type LeaveOut = fn(&mut Email) -> Option<usize>;

/// Room kept for the `omitted_reason` itself, so the event with it still fits.
const REASON_ROOM: usize = 256;

/// Leaves out the large fields, biggest first, until the event fits, naming each one in
/// `omitted_reason` so a handler knows to fetch the raw message instead.
pub(super) fn enforce_cap(event: &mut MailEvent, max_bytes: usize) {
    if json_len_upper_bound(event) <= max_bytes {
        return;
    }
    let mut total = serialized_len(event);
    if total <= max_bytes {
        return;
    }
    let budget = max_bytes.saturating_sub(REASON_ROOM);
    let mut omitted = Vec::new();
    for (field, leave_out) in OMITTABLE {
        if total <= budget {
            break;
        }
        // Swapping a value for `null` changes only its own bytes, so the new size follows
        // without serializing the whole event again.
        let mut shrink = |len: usize| total = total.saturating_sub(len) + "null".len();
        if let Some(len) = leave_out(&mut event.email) {
            shrink(len);
            omitted.push(field);
            if field == "extracted_text"
                && let Some(len) = take_len(&mut event.extracted_text)
            {
                // The same text at the top level goes with it, unnamed: it is one field twice.
                shrink(len);
            }
        }
    }
    event.omitted_reason = Some(format!(
        "payload larger than {max_bytes} bytes: left out {}; fetch GET /v1/messages/{}/raw",
        omitted.join(", "),
        event.message_id
    ));
}

/// Empties `slot`, returning the JSON length of what it held.
fn take_len<T: Serialize>(slot: &mut Option<T>) -> Option<usize> {
    slot.take().map(|value| serialized_len(&value))
}

/// The length of `value` as JSON, counted without building the text.
pub(super) fn serialized_len(value: &impl Serialize) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    match serde_json::to_writer(&mut counter, value) {
        Ok(()) => counter.0,
        Err(_) => usize::MAX,
    }
}

/// A bound the JSON length of `value` never exceeds, found without formatting anything: every
/// string byte counted as its longest escape (`\u00XX`), every number as the longest a number
/// prints as, `null` and booleans as five. Nearly every event is far below the cap, and this
/// spares it a serialization.
pub(super) fn json_len_upper_bound(value: &impl Serialize) -> usize {
    value.serialize(Bound).unwrap_or(usize::MAX)
}

const LONGEST_ESCAPE: usize = 6;
const LONGEST_NUMBER: usize = 40;
const LONGEST_LITERAL: usize = "false".len();

fn string_bound(len: usize) -> usize {
    LONGEST_ESCAPE.saturating_mul(len).saturating_add(2)
}

/// A serializer that returns the bound instead of writing: JSON's shape (`[`, `]`, `,` per
/// item; `{`, `}`, `:` and `,` per field) over the bounds of the leaves.
struct Bound;

/// What serde_json would refuse too: a map key that is neither a string nor a number, or a
/// type's own serialization error.
#[derive(Debug)]
struct NotJson;

impl std::fmt::Display for NotJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not serializable as JSON")
    }
}

impl std::error::Error for NotJson {}

impl ser::Error for NotJson {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Self
    }
}

/// An array or object being counted: the brackets, then each item and its separator.
struct Compound(usize);

impl Compound {
    fn add(&mut self, len: usize) {
        self.0 = self.0.saturating_add(len);
    }

    /// An object field: the key, the value, the colon and a comma.
    fn field(&mut self, key: &str, value: &(impl Serialize + ?Sized)) -> Result<(), NotJson> {
        let len = string_bound(key.len()).saturating_add(value.serialize(Bound)?);
        self.add(len.saturating_add(2));
        Ok(())
    }

    /// An array item and its comma.
    fn item(&mut self, value: &(impl Serialize + ?Sized)) -> Result<(), NotJson> {
        let len = value.serialize(Bound)?;
        self.add(len.saturating_add(1));
        Ok(())
    }
}

impl ser::Serializer for Bound {
    type Ok = usize;
    type Error = NotJson;
    type SerializeSeq = Compound;
    type SerializeTuple = Compound;
    type SerializeTupleStruct = Compound;
    type SerializeTupleVariant = Compound;
    type SerializeMap = Compound;
    type SerializeStruct = Compound;
    type SerializeStructVariant = Compound;

    fn serialize_bool(self, _: bool) -> Result<usize, NotJson> {
        Ok(LONGEST_LITERAL)
    }
    fn serialize_i8(self, _: i8) -> Result<usize, NotJson> {
        Ok(LONGEST_NUMBER)
    }
    fn serialize_i16(self, _: i16) -> Result<usize, NotJson> {
        Ok(LONGEST_NUMBER)
    }
    fn serialize_i32(self, _: i32) -> Result<usize, NotJson> {
        Ok(LONGEST_NUMBER)
    }
    fn serialize_i64(self, _: i64) -> Result<usize, NotJson> {
        Ok(LONGEST_NUMBER)
    }
    fn serialize_i128(self, _: i128) -> Result<usize, NotJson> {
        Ok(LONGEST_NUMBER)
    }
    fn serialize_u8(self, _: u8) -> Result<usize, NotJson> {
        Ok(LONGEST_NUMBER)
    }
    fn serialize_u16(self, _: u16) -> Result<usize, NotJson> {
        Ok(LONGEST_NUMBER)
    }
    fn serialize_u32(self, _: u32) -> Result<usize, NotJson> {
        Ok(LONGEST_NUMBER)
    }
    fn serialize_u64(self, _: u64) -> Result<usize, NotJson> {
        Ok(LONGEST_NUMBER)
    }
    fn serialize_u128(self, _: u128) -> Result<usize, NotJson> {
        Ok(LONGEST_NUMBER)
    }
    fn serialize_f32(self, _: f32) -> Result<usize, NotJson> {
        Ok(LONGEST_NUMBER)
    }
    fn serialize_f64(self, _: f64) -> Result<usize, NotJson> {
        Ok(LONGEST_NUMBER)
    }
    fn serialize_char(self, value: char) -> Result<usize, NotJson> {
        Ok(string_bound(value.len_utf8()))
    }
    fn serialize_str(self, value: &str) -> Result<usize, NotJson> {
        Ok(string_bound(value.len()))
    }
    /// serde_json writes bytes as an array of numbers.
    fn serialize_bytes(self, value: &[u8]) -> Result<usize, NotJson> {
        Ok((LONGEST_NUMBER + 1)
            .saturating_mul(value.len())
            .saturating_add(2))
    }
    fn serialize_none(self) -> Result<usize, NotJson> {
        Ok(LONGEST_LITERAL)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<usize, NotJson> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<usize, NotJson> {
        Ok(LONGEST_LITERAL)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<usize, NotJson> {
        Ok(LONGEST_LITERAL)
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<usize, NotJson> {
        Ok(string_bound(variant.len()))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<usize, NotJson> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<usize, NotJson> {
        let mut object = Compound(2);
        object.field(variant, value)?;
        Ok(object.0)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Compound, NotJson> {
        Ok(Compound(2))
    }
    fn serialize_tuple(self, _: usize) -> Result<Compound, NotJson> {
        Ok(Compound(2))
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Compound, NotJson> {
        Ok(Compound(2))
    }
    /// `{"variant":[…]}`: the object's share counted up front, the array's as it goes.
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Compound, NotJson> {
        Ok(Compound(2 + string_bound(variant.len()) + 2 + 2))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Compound, NotJson> {
        Ok(Compound(2))
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Compound, NotJson> {
        Ok(Compound(2))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Compound, NotJson> {
        Ok(Compound(2 + string_bound(variant.len()) + 2 + 2))
    }
}

impl ser::SerializeSeq for Compound {
    type Ok = usize;
    type Error = NotJson;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), NotJson> {
        self.item(value)
    }
    fn end(self) -> Result<usize, NotJson> {
        Ok(self.0)
    }
}

impl ser::SerializeTuple for Compound {
    type Ok = usize;
    type Error = NotJson;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), NotJson> {
        self.item(value)
    }
    fn end(self) -> Result<usize, NotJson> {
        Ok(self.0)
    }
}

impl ser::SerializeTupleStruct for Compound {
    type Ok = usize;
    type Error = NotJson;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), NotJson> {
        self.item(value)
    }
    fn end(self) -> Result<usize, NotJson> {
        Ok(self.0)
    }
}

impl ser::SerializeTupleVariant for Compound {
    type Ok = usize;
    type Error = NotJson;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), NotJson> {
        self.item(value)
    }
    fn end(self) -> Result<usize, NotJson> {
        Ok(self.0)
    }
}

impl ser::SerializeMap for Compound {
    type Ok = usize;
    type Error = NotJson;
    /// The key's share; serde_json writes every key as a string (numbers quoted), so a key is
    /// bounded by its own bound plus its quotes.
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), NotJson> {
        let len = key.serialize(MapKey)?;
        self.add(len);
        Ok(())
    }
    /// The value's share, with the colon and a comma.
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), NotJson> {
        let len = value.serialize(Bound)?;
        self.add(len.saturating_add(2));
        Ok(())
    }
    fn end(self) -> Result<usize, NotJson> {
        Ok(self.0)
    }
}

impl ser::SerializeStruct for Compound {
    type Ok = usize;
    type Error = NotJson;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), NotJson> {
        self.field(key, value)
    }
    fn end(self) -> Result<usize, NotJson> {
        Ok(self.0)
    }
}

impl ser::SerializeStructVariant for Compound {
    type Ok = usize;
    type Error = NotJson;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), NotJson> {
        self.field(key, value)
    }
    fn end(self) -> Result<usize, NotJson> {
        Ok(self.0)
    }
}

/// A map key: a string's bound, or for the other keys serde_json accepts (numbers, booleans,
/// chars) the bound of their text in quotes.
struct MapKey;

impl ser::Serializer for MapKey {
    type Ok = usize;
    type Error = NotJson;
    type SerializeSeq = Impossible<usize, NotJson>;
    type SerializeTuple = Impossible<usize, NotJson>;
    type SerializeTupleStruct = Impossible<usize, NotJson>;
    type SerializeTupleVariant = Impossible<usize, NotJson>;
    type SerializeMap = Impossible<usize, NotJson>;
    type SerializeStruct = Impossible<usize, NotJson>;
    type SerializeStructVariant = Impossible<usize, NotJson>;

    fn serialize_bool(self, _: bool) -> Result<usize, NotJson> {
        Ok(LONGEST_LITERAL + 2)
    }
    fn serialize_i8(self, _: i8) -> Result<usize, NotJson> {
        Ok(LONGEST_NUMBER + 2)
    }
    fn serialize_i16(self, _: i16) -> Result<usize, NotJson> {
        Ok(LONGEST_NUMBER + 2)
    }
    fn serialize_i32(self, _: i32) -> Result<usize, NotJson> {
        Ok(LONGEST_NUMBER + 2)
    }
    fn serialize_i64(self, _: i64) -> Result<usize, NotJson> {
        Ok(LONGEST_NUMBER + 2)
    }
    fn serialize_i128(self, _: i128) -> Result<usize, NotJson> {
        Ok(LONGEST_NUMBER + 2)
    }
    fn serialize_u8(self, _: u8) -> Result<usize, NotJson> {
        Ok(LONGEST_NUMBER + 2)
    }
    fn serialize_u16(self, _: u16) -> Result<usize, NotJson> {
        Ok(LONGEST_NUMBER + 2)
    }
    fn serialize_u32(self, _: u32) -> Result<usize, NotJson> {
        Ok(LONGEST_NUMBER + 2)
    }
    fn serialize_u64(self, _: u64) -> Result<usize, NotJson> {
        Ok(LONGEST_NUMBER + 2)
    }
    fn serialize_u128(self, _: u128) -> Result<usize, NotJson> {
        Ok(LONGEST_NUMBER + 2)
    }
    fn serialize_f32(self, _: f32) -> Result<usize, NotJson> {
        Ok(LONGEST_NUMBER + 2)
    }
    fn serialize_f64(self, _: f64) -> Result<usize, NotJson> {
        Ok(LONGEST_NUMBER + 2)
    }
    fn serialize_char(self, value: char) -> Result<usize, NotJson> {
        Ok(string_bound(value.len_utf8()))
    }
    fn serialize_str(self, value: &str) -> Result<usize, NotJson> {
        Ok(string_bound(value.len()))
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<usize, NotJson> {
        Err(NotJson)
    }
    fn serialize_none(self) -> Result<usize, NotJson> {
        Err(NotJson)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<usize, NotJson> {
        Err(NotJson)
    }
    fn serialize_unit(self) -> Result<usize, NotJson> {
        Err(NotJson)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<usize, NotJson> {
        Err(NotJson)
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<usize, NotJson> {
        Ok(string_bound(variant.len()))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<usize, NotJson> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<usize, NotJson> {
        Err(NotJson)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, NotJson> {
        Err(NotJson)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, NotJson> {
        Err(NotJson)
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, NotJson> {
        Err(NotJson)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, NotJson> {
        Err(NotJson)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, NotJson> {
        Err(NotJson)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, NotJson> {
        Err(NotJson)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, NotJson> {
        Err(NotJson)
    }
}
