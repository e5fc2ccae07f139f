"""What operators see: the status pages and `fcgiserver status`, the logs, usage errors, option docs."""
