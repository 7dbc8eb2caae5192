"""`radixpert demo`: a small end-to-end run on phantoms and its self-contained HTML report."""
