//! Gateway → gateway listeners (`http.<port>` route configs) and which VirtualServices bind to them.
