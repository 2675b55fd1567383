//! The namespace filter: which Kubernetes namespaces are reported (`--namespace`,
//! `--exclude-namespace`). Filtering happens in the kernel, on cgroups the attribution
//! stage marks; this decides what is wanted and what gets marked.

/// Which namespaces are wanted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceFilter {
    /// When non-empty, only these namespaces (and no host processes) are wanted.
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

impl NamespaceFilter {
    pub fn is_active(&self) -> bool {
        !self.include.is_empty() || !self.exclude.is_empty()
    }

    /// Whether events of `namespace` (`None`: the node's own processes) are wanted.
    pub fn wants(&self, namespace: Option<&str>) -> bool {
        match namespace {
            None => self.include.is_empty(),
            Some(ns) => {
                (self.include.is_empty() || self.include.iter().any(|n| n == ns))
                    && !self.exclude.iter().any(|n| n == ns)
            }
        }
    }

    /// The kernel filter mode these rules need.
    pub fn kernel_mode(&self) -> u32 {
        if !self.include.is_empty() {
            observer_common::filter::INCLUDE
        } else if !self.exclude.is_empty() {
            observer_common::filter::EXCLUDE
        } else {
            observer_common::filter::OFF
        }
    }

    /// Whether a pod's cgroups are marked in the kernel map: in include mode the wanted
    /// pods are marked (everything else is dropped), in exclude mode the unwanted ones.
    pub(super) fn marks(&self, namespace: &str) -> bool {
        if self.include.is_empty() {
            !self.wants(Some(namespace))
        } else {
            self.wants(Some(namespace))
        }
    }
}
