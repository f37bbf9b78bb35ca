"""The lazy filesystem: eStargz layers served on demand, and plain layers unpacked."""
