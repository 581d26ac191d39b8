//! Differences between two configuration documents, element by element (matched by id).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ConfigDocument;

/// What happened to one element.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// Present only in the newer document.
    Added,
    /// Present only in the older document.
    Removed,
    /// Present in both, different.
    Changed,
}

/// One changed element: `section/id` and, for changes, the fields that differ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DocumentChange {
    /// Section (`controls`, `assessments`, ...) or `document` for top-level fields.
    pub section: String,
    /// Element id (or the top-level field name).
    pub id: String,
    /// Added, removed or changed.
    pub kind: ChangeKind,
    /// Fields that differ (changed elements only).
    pub fields: Vec<String>,
}

impl Default for DocumentChange {
    fn default() -> Self {
        DocumentChange { section: String::new(), id: String::new(), kind: ChangeKind::Changed, fields: Vec::new() }
    }
}

fn by_id(v: &Value) -> BTreeMap<String, &Value> {
    v.as_array()
        .map(|items| {
            items.iter().filter_map(|i| i.get("id").and_then(Value::as_str).map(|id| (id.to_owned(), i))).collect()
        })
        .unwrap_or_default()
}

/// Every element added, removed or changed going from `old` to `new`, in section and id order.
#[must_use]
pub fn diff_documents(old: &ConfigDocument, new: &ConfigDocument) -> Vec<DocumentChange> {
    let (Ok(a), Ok(b)) = (serde_json::to_value(old), serde_json::to_value(new)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for field in ["version", "description"] {
        if a.get(field) != b.get(field) {
            out.push(DocumentChange {
                section: "document".into(),
                id: field.into(),
                kind: ChangeKind::Changed,
                fields: Vec::new(),
            });
        }
    }
    for section in ["services", "controls", "components", "assessments", "attestations", "pools"] {
        let empty = Value::Null;
        let old_items = by_id(a.get(section).unwrap_or(&empty));
        let new_items = by_id(b.get(section).unwrap_or(&empty));
        for (id, o) in &old_items {
            match new_items.get(id) {
                None => out.push(DocumentChange {
                    section: section.into(),
                    id: id.clone(),
                    kind: ChangeKind::Removed,
                    fields: Vec::new(),
                }),
                Some(n) if n != o => {
                    let mut fields: Vec<String> = Vec::new();
                    if let (Some(om), Some(nm)) = (o.as_object(), n.as_object()) {
                        for k in om.keys().chain(nm.keys()) {
                            if om.get(k) != nm.get(k) && !fields.contains(k) {
                                fields.push(k.clone());
                            }
                        }
                    }
                    fields.sort();
                    out.push(DocumentChange {
                        section: section.into(),
                        id: id.clone(),
                        kind: ChangeKind::Changed,
                        fields,
                    });
                }
                Some(_) => {}
            }
        }
        for id in new_items.keys().filter(|id| !old_items.contains_key(*id)) {
            out.push(DocumentChange {
                section: section.into(),
                id: id.clone(),
                kind: ChangeKind::Added,
                fields: Vec::new(),
            });
        }
    }
    out
}
