//! Per-backend endpoint choice and protection: load-balancing algorithms (least request, round robin, random,
//! consistent hash by ring or Maglev, locality preference), outlier detection and connection/request limits
//! (circuit breaking).
