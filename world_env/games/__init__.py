"""Real games behind the dream, behind one small interface."""
