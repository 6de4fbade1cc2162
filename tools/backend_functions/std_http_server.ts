// Stands in for deno.land/std's `serve` (0.168–0.208), which cannot be downloaded here: the same
// call, served by Deno.serve on the port the harness gives in PORT.
type Handler = (request: Request, info?: unknown) => Response | Promise<Response>;

export function serve(handler: Handler, options: { port?: number } = {}) {
  const port = Number(Deno.env.get("PORT") ?? options.port ?? 8000);
  return Deno.serve({ hostname: "127.0.0.1", port, onListen: () => console.log(`listening ${port}`) },
    (request, info) => handler(request, info));
}
