"""backends layer (see DESIGN.md)."""
