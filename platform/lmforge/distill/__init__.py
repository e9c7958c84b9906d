"""``lmforge distill``: a smaller student trained to match a teacher's next-token distribution."""
