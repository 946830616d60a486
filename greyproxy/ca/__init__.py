"""The interception CA: the authority (key 0600, generation, loading), per-name leaf
certificates, and the live state the proxy and the API share. Its own package so the control
plane (api/) can manage the CA without importing the proxy."""
