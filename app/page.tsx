import { HomeView } from './_components/HomeView';

export default function HomePage() {
  return (
    <>
      <div className="page-head">
        <div>
          <h1>flashlab</h1>
          <p>
            What makes LLM inference fast — naive attention, FlashAttention-1/2, KV caching, tensor parallelism —
            measured on our own engine.
          </p>
        </div>
      </div>
      <HomeView />
    </>
  );
}
