"""`exportctl`, the operator's and developer's command line: the embedded local stack, schema
migration, demo data, exports, verification and restore. It is an entry point: it may import
`api`, `workers` and `pipelines`, and nothing imports it."""
