// Server-rendered on every request: proves the Next.js server runs in the VM.
export async function getServerSideProps() {
  return { props: { node: process.version, pid: process.pid, at: Date.now() } };
}

export default function Home({ node, pid, at }) {
  return (
    <main>
      <h1>thaw-next-ok</h1>
      <p id="node">{node}</p>
      <p id="pid">{pid}</p>
      <p id="at">{at}</p>
    </main>
  );
}
