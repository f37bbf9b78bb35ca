"""Root filesystems for containers: overlayfs mounts over (lazily served) layer dirs."""

from lazybuild.snapshot.overlay import MountError, is_mounted, mount_overlay, unmount

__all__ = ["MountError", "is_mounted", "mount_overlay", "unmount"]
