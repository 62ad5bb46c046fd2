//! ZDS framing: SOCK_SEQPACKET messages with a network-namespace fd (spec 4.1).
