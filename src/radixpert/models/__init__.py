"""Model components: vision towers, connectors and their builders."""
