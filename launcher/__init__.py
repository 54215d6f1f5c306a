"""The launcher: the ``infoscore`` command (``launcher.cli``), the embedded supervisor
behind ``infoscore up`` (``launcher.supervisor``) and the HTTP client the command uses
(``launcher.client``). It sits above the gateway (``service``) and the workers
(``workers``) and starts them; neither of them imports it."""
