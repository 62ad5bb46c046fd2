//! ZDS from the node agent into ztunnel: packets over a real `SOCK_SEQPACKET` pair into `inpod::serve`, the
//! session ztunnel runs per connection (decode, the protocol rules, one ack per request).

use std::collections::HashSet;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;
use std::time::Duration;

use ambit_core::zds::{ZdsError, ZdsSocket};
use ambit_proto::zds::{Version, WorkloadResponse, ZdsHello, workload_response};
use ambit_ztunnel::inpod::{WorkloadProxyManager, serve};
use ambit_ztunnel::pods::PodIdentity;
use prost::Message;

use crate::records;
use crate::runtime::block_on_within;

/// Records what the session asked for; a uid starting with `fail` does not start (a NACK and a retry).
#[derive(Default)]
struct Recorder {
    running: Mutex<HashSet<String>>,
}

#[async_trait::async_trait]
impl WorkloadProxyManager for Recorder {
    async fn start(&self, uid: &str, _pod: PodIdentity, _netns: OwnedFd) -> Result<(), String> {
        if uid.starts_with("fail") {
            return Err("refused by the fuzz recorder".into());
        }
        if let Ok(mut r) = self.running.lock() {
            r.insert(uid.to_owned());
        }
        Ok(())
    }
    async fn stop(&self, uid: &str) {
        if let Ok(mut r) = self.running.lock() {
            r.remove(uid);
        }
    }
    async fn retain(&self, keep: &HashSet<String>) {
        if let Ok(mut r) = self.running.lock() {
            r.retain(|u| keep.contains(u));
        }
    }
}

/// Input: records (`[len u16][bytes]`, see `records`) whose first byte says whether a descriptor goes
/// with the packet (odd: yes) and whose rest is the packet (normally an encoded `WorkloadRequest`).
pub fn zds_session(data: &[u8]) {
    let packets: Vec<(bool, Vec<u8>)> = records(data)
        .into_iter()
        .filter_map(|r| r.split_first().map(|(f, p)| (f & 1 == 1, p.to_vec())))
        .collect();
    let _ = block_on_within(Duration::from_secs(20), session(packets));
}

async fn session(packets: Vec<(bool, Vec<u8>)>) {
    let Ok((agent, ztunnel)) = ZdsSocket::pair() else {
        panic!("zds target: no socketpair");
    };
    let Ok(devnull) = std::fs::File::open("/dev/null") else {
        panic!("zds target: cannot open /dev/null");
    };
    let mgr = Recorder::default();
    let sent = packets
        .iter()
        .position(|(fd, p)| !fd && p.is_empty())
        .unwrap_or(packets.len());
    let serving = async {
        let mut ready = None;
        let r = serve(&ztunnel, &mgr, &mut ready).await;
        drop(ztunnel);
        r
    };
    let node_agent = async move {
        let (hello, _) = agent
            .recv_msg::<ZdsHello>()
            .await
            .unwrap_or_else(|e| panic!("ztunnel sent no hello: {e}"));
        assert_eq!(hello.version, Version::V1 as i32);
        let mut acks = 0usize;
        for (with_fd, packet) in &packets {
            let fd = with_fd.then(|| devnull.as_fd());
            if agent.send(packet, fd).await.is_err() {
                break;
            }
            match agent.recv().await {
                Ok((bytes, fd)) => {
                    assert!(fd.is_none(), "ztunnel sent a descriptor");
                    let resp = WorkloadResponse::decode(bytes.as_slice())
                        .unwrap_or_else(|e| panic!("ztunnel's answer does not decode: {e}"));
                    assert!(
                        matches!(resp.payload, Some(workload_response::Payload::Ack(_))),
                        "ztunnel answered {resp:?}, not an ack"
                    );
                    acks += 1;
                }
                // ztunnel dropped the connection (a protocol violation or an undecodable packet).
                Err(ZdsError::Closed) | Err(ZdsError::Io(_)) => break,
                Err(e) => panic!("ztunnel's answer: {e}"),
            }
        }
        drop(agent);
        acks
    };
    let (result, acks) = tokio::join!(serving, node_agent);
    if result.is_ok() {
        // A session that ended cleanly acknowledged every packet up to the hang-up (an empty packet without a
        // descriptor reads like the peer closing, by design of the framing).
        assert_eq!(acks, sent, "clean session but not every request acked");
    }
}
