"""The browse page served at ``/ui/``: static HTML, CSS and JavaScript shipped in the package."""
