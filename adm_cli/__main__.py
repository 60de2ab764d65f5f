from adm_cli.cli.app import app

app(prog_name="adm")
