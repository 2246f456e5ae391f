"""The Synchronizer: VM disks to the repository, incrementally, and back."""
