"""Fork safety, supervisor side: what workers inherit and must not share, checked while they run."""
