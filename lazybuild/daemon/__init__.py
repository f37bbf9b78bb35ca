"""``lazybuild serve``: one long-lived process that owns a state directory and answers
the gRPC ``Control`` API (``lazybuild/api``). See docs/daemon.md."""
