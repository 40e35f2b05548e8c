"""The pure core: the vocabulary, the policy, the stored record and THE transition table.

Nothing in this package opens a socket, reads a clock or sleeps. The runtime hands it
what it observed and gets back what to store, what to say and what to do.
"""
