"""Model families: each module builds one family of networks from its config."""
