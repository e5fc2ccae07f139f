"""Listening sockets: bind addresses, who may connect, and how many connections wait."""
