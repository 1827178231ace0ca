"""The replicas of a persona as peers: who they are (discovery) and sending a conversation's
turn to the one that owns it (forwarding)."""
