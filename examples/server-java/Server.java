import com.sun.net.httpserver.HttpServer;
import java.io.IOException;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;

/** A small HTTP service on the JDK's own server: says hello, and says when it listens. */
public final class Server {
    public static void main(String[] args) throws IOException {
        String address = System.getenv().getOrDefault("LISTEN_HOST", "127.0.0.1");
        int port = Integer.parseInt(System.getenv().getOrDefault("LISTEN_PORT", "8080"));
        HttpServer server = HttpServer.create(new InetSocketAddress(address, port), 0);
        server.createContext("/", exchange -> {
            byte[] body = ("hello from a Java server built by lazybuild ("
                    + System.getProperty("os.arch") + ")\n").getBytes(StandardCharsets.UTF_8);
            exchange.getResponseHeaders().set("Content-Type", "text/plain; charset=utf-8");
            exchange.sendResponseHeaders(200, body.length);
            try (OutputStream out = exchange.getResponseBody()) {
                out.write(body);
            }
        });
        server.start();
        System.out.println("ready: listening on http://" + address + ":" + port);
    }
}
