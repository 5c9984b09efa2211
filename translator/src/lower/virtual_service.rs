//! VirtualService → virtual hosts and routes (match, action, mirrors, retries, fault, CORS, headers).
