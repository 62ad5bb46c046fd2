//! Shared (in-pod) mode: the ZDS client that receives pods from the node agent (spec 4.1).
