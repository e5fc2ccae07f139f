"""The PEP 3333 bridge: FastCGI params in, a WSGI call, a CGI response out; and loading the app."""
