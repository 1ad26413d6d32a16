"""Tables and figures for people to read: matplotlib figures and the HTML report."""
