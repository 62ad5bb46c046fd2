//! Errors of the API, as Kubernetes `Status` objects: kubectl and kube-rs print their `message` and act on their
//! `reason` and `code` (404 → NotFound, 409 → Conflict, 410 → re-list).

use serde_json::{Value, json};

/// One failed API request. Every variant maps to the HTTP code and `Status.reason` the real API server uses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    NotFound { message: String, details: Details },
    #[error("{message}")]
    AlreadyExists { message: String, details: Details },
    /// A stale `resourceVersion`, a failed precondition, or an apply conflict with another field manager.
    #[error("{message}")]
    Conflict { message: String, details: Details },
    /// The object is syntactically fine but breaks a rule (name format, CRD spec...): 422.
    #[error("{message}")]
    Invalid { message: String, details: Details },
    /// The request itself is malformed (bad JSON, bad selector, namespace mismatch): 400.
    #[error("{0}")]
    BadRequest(String),
    /// A watch or continue token older than the retained history: 410 with reason `Expired`.
    #[error("{0}")]
    Expired(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Internal(String),
}

/// `Status.details`: which object the error is about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Details {
    pub name: String,
    pub group: String,
    pub kind: String,
}

impl Details {
    pub fn new(name: &str, group: &str, plural: &str) -> Self {
        Details {
            name: name.to_owned(),
            group: group.to_owned(),
            kind: plural.to_owned(),
        }
    }
}

/// `pods "x"` or `gateways.gateway.networking.k8s.io "x"`, as the real server names objects in messages.
pub fn qualified(group: &str, plural: &str, name: &str) -> String {
    if group.is_empty() {
        format!("{plural} \"{name}\"")
    } else {
        format!("{plural}.{group} \"{name}\"")
    }
}

impl ApiError {
    pub fn not_found(group: &str, plural: &str, name: &str) -> Self {
        ApiError::NotFound {
            message: format!("{} not found", qualified(group, plural, name)),
            details: Details::new(name, group, plural),
        }
    }

    pub fn already_exists(group: &str, plural: &str, name: &str) -> Self {
        ApiError::AlreadyExists {
            message: format!("{} already exists", qualified(group, plural, name)),
            details: Details::new(name, group, plural),
        }
    }

    pub fn conflict(group: &str, plural: &str, name: &str, why: &str) -> Self {
        ApiError::Conflict {
            message: format!(
                "Operation cannot be fulfilled on {}: {why}",
                qualified(group, plural, name)
            ),
            details: Details::new(name, group, plural),
        }
    }

    pub fn stale(group: &str, plural: &str, name: &str) -> Self {
        Self::conflict(
            group,
            plural,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    pub fn invalid(kind: &str, group: &str, name: &str, why: impl std::fmt::Display) -> Self {
        ApiError::Invalid {
            message: format!("{kind} \"{name}\" is invalid: {why}"),
            details: Details {
                name: name.to_owned(),
                group: group.to_owned(),
                kind: kind.to_owned(),
            },
        }
    }

    pub fn code(&self) -> u16 {
        match self {
            ApiError::NotFound { .. } => 404,
            ApiError::AlreadyExists { .. } | ApiError::Conflict { .. } => 409,
            ApiError::Invalid { .. } => 422,
            ApiError::BadRequest(_) => 400,
            ApiError::Expired(_) => 410,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::UnsupportedMediaType(_) => 415,
            ApiError::Forbidden(_) => 403,
            ApiError::Unauthorized(_) => 401,
            ApiError::TooLarge(_) => 413,
            ApiError::Internal(_) => 500,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::NotFound { .. } => "NotFound",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict { .. } => "Conflict",
            ApiError::Invalid { .. } => "Invalid",
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::Expired(_) => "Expired",
            ApiError::MethodNotAllowed(_) => "MethodNotAllowed",
            ApiError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            ApiError::Forbidden(_) => "Forbidden",
            ApiError::Unauthorized(_) => "Unauthorized",
            ApiError::TooLarge(_) => "RequestEntityTooLarge",
            ApiError::Internal(_) => "InternalError",
        }
    }

    /// The `Status` object the response carries.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code(),
        });
        let details = match self {
            ApiError::NotFound { details, .. }
            | ApiError::AlreadyExists { details, .. }
            | ApiError::Conflict { details, .. }
            | ApiError::Invalid { details, .. } => Some(details),
            _ => None,
        };
        if let Some(d) = details {
            status["details"] = json!({"name": d.name, "group": d.group, "kind": d.kind});
        }
        status
    }
}

/// The `Status` of a successful immediate deletion.
pub fn success_status(name: &str, group: &str, plural: &str, uid: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {"name": name, "group": group, "kind": plural, "uid": uid},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_objects_carry_reason_code_and_details() {
        let s = ApiError::not_found("gateway.networking.k8s.io", "gateways", "w").to_status();
        assert_eq!(s["kind"], "Status");
        assert_eq!(s["code"], 404);
        assert_eq!(s["reason"], "NotFound");
        assert_eq!(
            s["message"],
            "gateways.gateway.networking.k8s.io \"w\" not found"
        );
        assert_eq!(s["details"]["name"], "w");
        let s = ApiError::stale("", "pods", "p").to_status();
        assert_eq!(
            (s["code"].as_u64(), s["reason"].as_str()),
            (Some(409), Some("Conflict"))
        );
        assert_eq!(ApiError::Expired("x".into()).to_status()["code"], 410);
    }
}
