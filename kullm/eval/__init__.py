"""`kullm eval`: answer quality as KULLM3's authors measured it (G-Eval through the real
pipeline), A/B comparisons of settings."""
