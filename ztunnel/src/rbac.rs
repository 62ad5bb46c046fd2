//! L4 authorization at the destination ztunnel (spec 5). The policy engine (types, conversion from
//! `istio.security.Authorization`, matching, evaluation and explanation) is `ambit_core::rbac`, shared with
//! `ambit authz check`; ztunnel only picks the policies that apply to a destination workload.

#[cfg(test)]
mod tests;

pub use ambit_core::rbac::*;

use crate::state::{ProxyState, Workload};

impl ProxyState {
    /// Authorizes `conn` to `dst_workload` against every policy that applies to it (spec 5).
    pub fn assert_rbac(
        &self,
        dst_workload: &Workload,
        conn: &Connection,
    ) -> Result<(), RbacDenied> {
        let policies = self.policies_for(dst_workload);
        evaluate(&policies, conn)
    }
}
