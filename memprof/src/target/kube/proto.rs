//! The few messages of containerd's and the CRI's gRPC APIs that `--pod` uses, written out as
//! prost types (fields memprof does not read are left out: prost skips unknown fields).
//!
//! - containerd (`github.com/containerd/containerd/api`, v1.6+):
//!   `containerd.services.containers.v1.Containers/List` (services/containers/v1/containers.proto)
//!   and `containerd.services.tasks.v1.Tasks/Get` (services/tasks/v1/tasks.proto,
//!   types/task/task.proto); the namespace goes in the `containerd-namespace` header.
//! - CRI (`k8s.io/cri-api`, `runtime.v1`): `runtime.v1.RuntimeService/ListContainers`
//!   (pkg/apis/runtime/v1/api.proto).

use std::collections::HashMap;

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Any {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `containerd.services.containers.v1.Container` (id, labels, spec).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Container {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(map = "string, string", tag = "2")]
    pub labels: HashMap<String, String>,
    /// The OCI runtime spec, as JSON (`types.containerd.io/opencontainers/runtime-spec/1/Spec`).
    #[prost(message, optional, tag = "5")]
    pub spec: Option<Any>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListContainersRequest {
    /// containerd filters, e.g. `labels."io.kubernetes.pod.name"==web`; any one may match.
    #[prost(string, repeated, tag = "1")]
    pub filters: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListContainersResponse {
    #[prost(message, repeated, tag = "1")]
    pub containers: Vec<Container>,
}

/// `containerd.services.tasks.v1.GetRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetTaskRequest {
    #[prost(string, tag = "1")]
    pub container_id: String,
    #[prost(string, tag = "2")]
    pub exec_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GetTaskResponse {
    #[prost(message, optional, tag = "1")]
    pub process: Option<Process>,
}

/// `containerd.v1.types.Process`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Process {
    #[prost(string, tag = "1")]
    pub container_id: String,
    #[prost(uint32, tag = "3")]
    pub pid: u32,
    /// `containerd.v1.types.Status`: see [`TASK_RUNNING`].
    #[prost(int32, tag = "4")]
    pub status: i32,
}

/// `containerd.v1.types.Status.RUNNING`.
pub const TASK_RUNNING: i32 = 2;

/// `runtime.v1.ListContainersRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CriListContainersRequest {
    #[prost(message, optional, tag = "1")]
    pub filter: Option<CriContainerFilter>,
}

/// `runtime.v1.ContainerFilter`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CriContainerFilter {
    #[prost(message, optional, tag = "2")]
    pub state: Option<CriContainerStateValue>,
    #[prost(map = "string, string", tag = "4")]
    pub label_selector: HashMap<String, String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CriContainerStateValue {
    #[prost(int32, tag = "1")]
    pub state: i32,
}

/// `runtime.v1.ContainerState.CONTAINER_RUNNING`.
pub const CRI_RUNNING: i32 = 1;

#[derive(Clone, PartialEq, prost::Message)]
pub struct CriListContainersResponse {
    #[prost(message, repeated, tag = "1")]
    pub containers: Vec<CriContainer>,
}

/// `runtime.v1.Container` (id, pod sandbox, metadata, state, labels).
#[derive(Clone, PartialEq, prost::Message)]
pub struct CriContainer {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub pod_sandbox_id: String,
    #[prost(message, optional, tag = "3")]
    pub metadata: Option<CriContainerMetadata>,
    #[prost(int32, tag = "6")]
    pub state: i32,
    #[prost(map = "string, string", tag = "8")]
    pub labels: HashMap<String, String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CriContainerMetadata {
    #[prost(string, tag = "1")]
    pub name: String,
}
