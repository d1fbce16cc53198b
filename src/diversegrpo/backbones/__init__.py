"""Backbone adapters: toy, sd3, flux behind one interface (`base.Backbone`; docs/decisions.md)."""
