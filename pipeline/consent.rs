//! The consent ledger (placeholder).
