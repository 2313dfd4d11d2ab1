"""The export engine: settings, database access, row sources, serializers, compression, digests,
storage sinks, verification and restore. Importable without Falcon or Dramatiq."""
