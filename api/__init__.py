"""The Falcon API: authenticates, authorizes, writes job rows and enqueues; never touches export
bytes."""
