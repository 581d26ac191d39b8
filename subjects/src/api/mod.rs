//! Request and reply types of the Steward endpoints (wire types: MessagePack with named fields,
//! every field defaulted so older peers keep working when fields are added). One module per
//! noun of the subject grammar.

pub mod health;
pub mod host;
