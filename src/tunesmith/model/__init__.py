"""Model references, loading, adapters and export."""
