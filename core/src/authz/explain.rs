//! Why a request was allowed or denied: every applicable policy, and for each rule whether it matched and, if
//! not, the first field that failed. Built by the same matching code as the decision ([`super::matching`]).

use std::fmt;

use serde::Serialize;

use super::matching::Record;
use super::{Action, Decision, Policy, Reason, Request};

/// [`super::PolicySet::explain`]'s result; JSON with serde, text with `Display`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation<'p> {
    pub decision: Decision<'p>,
    /// Every policy that applies to the request: CUSTOM, DENY, ALLOW, AUDIT, then dry-run ones.
    pub policies: Vec<PolicyExplanation<'p>>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyExplanation<'p> {
    #[serde(skip)]
    pub policy: &'p Policy,
    pub name: &'p str,
    pub action: Action,
    pub dry_run: bool,
    /// The first rule that matched; None: the policy did not match.
    pub matched_rule: Option<usize>,
    pub rules: Vec<RuleExplanation>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleExplanation {
    pub index: usize,
    pub matched: bool,
    /// Why not: `to[0].operation.methods: "POST" not in ["GET"]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl<'p> PolicyExplanation<'p> {
    pub(crate) fn of(policy: &'p Policy, req: &Request<'_>) -> Self {
        let rules: Vec<RuleExplanation> = policy
            .rules
            .iter()
            .enumerate()
            .map(|(index, r)| {
                let mut t = Record::default();
                let matched = r.matches(req, &mut t);
                RuleExplanation {
                    index,
                    matched,
                    reason: if matched { None } else { t.0 },
                }
            })
            .collect();
        PolicyExplanation {
            policy,
            name: &policy.name,
            action: policy.action,
            dry_run: policy.dry_run,
            matched_rule: rules.iter().find(|r| r.matched).map(|r| r.index),
            rules,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
            Action::Custom => "CUSTOM",
        })
    }
}

impl fmt::Display for Decision<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.allowed { "ALLOW" } else { "DENY" })?;
        match (self.reason, self.by, self.rule) {
            (Reason::NoAllowPolicies, ..) => f.write_str(": no ALLOW policy applies")?,
            (Reason::NoAllowMatched, ..) => f.write_str(": ALLOW policies apply, none matched")?,
            (_, Some(by), Some(rule)) => write!(f, ": {} {} rule {rule}", by.action, by.name)?,
            (_, Some(by), None) => write!(f, ": {} {}", by.action, by.name)?,
            (_, None, _) => {}
        }
        if let Some(c) = &self.custom {
            write!(
                f,
                "; ask ext_authz provider {:?} first (CUSTOM {} rule {})",
                c.provider.name, c.policy.name, c.rule
            )?;
        }
        for a in &self.audited {
            write!(f, "; audited by {}", a.name)?;
        }
        if self.dry_run_would_deny {
            match self.dry_run_by {
                Some(p) => write!(f, "; dry-run: {} would deny", p.name)?,
                None => f.write_str("; dry-run: ALLOW policies would deny")?,
            }
        }
        Ok(())
    }
}

impl fmt::Display for Explanation<'_> {
    /// ```text
    /// decision: DENY: ALLOW policies apply, none matched
    /// ns/allow-get (ALLOW): no rule matched
    ///   rule 0: to[0].operation.methods: "POST" not in ["GET"]
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "decision: {}", self.decision)?;
        if self.policies.is_empty() {
            writeln!(f, "no policy applies")?;
        }
        for p in &self.policies {
            let dry = if p.dry_run { ", dry-run" } else { "" };
            match (p.matched_rule, p.rules.is_empty()) {
                (_, true) => writeln!(
                    f,
                    "{} ({}{dry}): no rules, matches nothing",
                    p.name, p.action
                )?,
                (Some(r), false) => {
                    writeln!(f, "{} ({}{dry}): rule {r} matched", p.name, p.action)?
                }
                (None, false) => writeln!(f, "{} ({}{dry}): no rule matched", p.name, p.action)?,
            }
            for r in &p.rules {
                match &r.reason {
                    Some(why) => writeln!(f, "  rule {}: {why}", r.index)?,
                    None if r.matched => writeln!(f, "  rule {}: matched", r.index)?,
                    None => writeln!(f, "  rule {}: did not match", r.index)?,
                }
            }
        }
        Ok(())
    }
}
