"""hyperhive: a swarm of Claude Code agents under one operator."""
