"""Jobs: the creating POSTs run in the background when asked (`Prefer: respond-async`)."""
