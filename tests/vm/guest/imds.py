"""The VM tier's stand-in for the EC2 instance metadata service (IMDSv2), on a guest-local
dummy interface: 169.254.169.254 answers the token PUT and the few paths the host's units
read (instance id, region, local address); 169.254.170.2 stands for the ECS credentials
address. Tenants must reach neither (the firewall check); root on the host may reach IMDS."""
import http.server
import socket
import threading

TOKEN = "vm-imds-token"


def local_ipv4():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("10.0.2.2", 9))  # no packet is sent: this only picks the source address
        return s.getsockname()[0]
    finally:
        s.close()


META = {
    "/latest/meta-data/instance-id": "i-0123456789abcdef0",
    "/latest/meta-data/placement/region": "us-east-1",
    "/latest/meta-data/local-ipv4": local_ipv4,  # read per request: DHCP may come later
    "/": "instance-metadata",
}


class Handler(http.server.BaseHTTPRequestHandler):
    def reply(self, code, body):
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self):
        if self.path == "/latest/api/token":
            self.reply(200, TOKEN)
        else:
            self.reply(404, "not found")

    def do_GET(self):
        if self.path != "/" and self.headers.get("X-aws-ec2-metadata-token") != TOKEN:
            self.reply(401, "token required")
        elif self.path in META:
            v = META[self.path]
            self.reply(200, v() if callable(v) else v)
        else:
            self.reply(404, "not found")


servers = [http.server.ThreadingHTTPServer((a, 80), Handler) for a in ("169.254.169.254", "169.254.170.2")]
for s in servers[1:]:
    threading.Thread(target=s.serve_forever, daemon=True).start()
servers[0].serve_forever()
