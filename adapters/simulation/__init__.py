"""What every provider simulator shares: the homecare lifecycle, its knobs, and the book of orders taken."""
