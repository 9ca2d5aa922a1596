"""MPI communicator wrappers."""
