"""Platform adapters. They depend on `kullm_core`; the core never imports them."""
