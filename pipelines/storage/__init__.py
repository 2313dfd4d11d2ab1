"""Object storage: the S3 client, sinks that write export bytes, and readers that stream them."""
