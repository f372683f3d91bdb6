"""Text from models: loading them (embedded, shipped, local, Hub; adapters), the packed generation engine, and the cache every generation and judgment goes through."""
